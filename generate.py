"""generate.py: lands with its issue (see README.md). The library pieces it builds on are in training/."""

import sys

if __name__ == '__main__':
    print('generate.py is not implemented yet; it lands with its issue (see README.md).', file=sys.stderr)
    sys.exit(2)
