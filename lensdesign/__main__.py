"""`python -m lensdesign ...`: the `lensdesign` command (so that `torchrun -m lensdesign optimize ...` works)."""

from lensdesign.cli import main

if __name__ == "__main__":
    main()
