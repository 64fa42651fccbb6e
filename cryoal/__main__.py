"""`python -m cryoal`: the same CLI (this is what torchrun launches)."""

from cryoal.cli import main

if __name__ == "__main__":
    main()
