"""copick projects: `source` reads tomograms and picks out of one (for `cryoal extract --copick`),
`export` writes a pool's selections and predictions back into one (`cryoal export-copick`).
The `copick` package itself is an optional extra, imported only when a project is opened."""
