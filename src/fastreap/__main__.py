"""``python -m fastreap run ...`` / ``python -m fastreap bench ...``."""

from ._cli import main

if __name__ == "__main__":
    main()
