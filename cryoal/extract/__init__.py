"""`cryoal extract`: boxes cut straight out of tomograms at picked coordinates, into a pool.

Modules: `picks` (picks files and coordinate conventions), `tomograms` (finding, checking and
memory-mapping tomograms), `boxes` (cutting, Fourier-crop binning, z-score), `run` (plan, then
cut into the pool). Conventions:

* Axes: a tomogram array is (z, y, x) as mrcfile returns it; `vol[z, y, x]` sits at pixel
  (x, y, z), 0-based.
* RELION 5 `rlnCenteredCoordinate{X,Y,Z}Angst`: Å from the tomogram centre; pixel =
  Å / pixel_size + size/2, size = (W, H, D). The tomogram's pixel size comes from its header
  (`--tomo-pixel-size` overrides it, and is required when the header says 0).
* `rlnCoordinate{X,Y,Z}` (RELION 4 / generic) and CSV `tomo,x,y,z`: 0-based pixels of the
  tomogram, or of `--coord-pixel-size` Å (then scaled by coord_pixel_size / tomogram pixel size).
* `rlnOrigin{X,Y,Z}Angst`, when present, is subtracted from the position (RELION's shift).
* The centre voxel is `floor(p + 0.5)`; a box of size b spans centre - b//2 .. centre - b//2 + b - 1.
* A pick whose centre voxel lies outside the tomogram is skipped and counted. A box crossing the
  edge is filled with the tomogram's mean (exact for tomograms up to 16 M voxels, else the mean
  of evenly spaced z-slices, about 16 M voxels) and flagged in the pool's `edge` dataset.
* `--bin N`: a box of N·b voxels is cut and Fourier-cropped to b (mean preserved); the pool's
  voxel size is N times the tomogram's. Every box is then z-scored (mean 0, std 1, float32), as
  ingest does: NaN/Inf voxels or a constant box stop the run with an error naming the particle.
* Memory: tomograms are memory-mapped one at a time and read in (z, y, x) order; pages behind the
  reading front are unmapped, so peak memory does not grow with the tomogram's size.
* Particle ids: `rlnTomoParticleName` (or a `particle_id` column), else `<tomo>_<n>` with n the
  1-based rank of the pick among that tomogram's picks in file order.
"""

from cryoal.extract.run import ExtractOptions, Plan, Summary, extract, plan_extraction, run_extraction

__all__ = ["ExtractOptions", "Plan", "Summary", "extract", "plan_extraction", "run_extraction"]
