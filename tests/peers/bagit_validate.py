#!/usr/bin/env python3
"""Validate a BagIt bag with the PyPI `bagit` library (Library of Congress).

Usage: bagit_validate.py BAG

hashlib has no blake3, so `hashlib.new("blake3")` is taught it from the PyPI `blake3`
package: every manifest, blake3 included, is then checked in full. Exits 0 when the bag
is valid, 1 (with the reasons on stderr) when not.
"""
import hashlib
import sys

import bagit
import blake3

_new = hashlib.new


def _new_with_blake3(name, *args, **kwargs):
    if name == "blake3":
        return blake3.blake3(*args)
    return _new(name, *args, **kwargs)


hashlib.new = _new_with_blake3

try:
    bag = bagit.Bag(sys.argv[1])
    bag.validate(processes=1)
except bagit.BagValidationError as e:
    print(f"invalid bag: {e}", file=sys.stderr)
    for d in getattr(e, "details", []) or []:
        print(f"  {d}", file=sys.stderr)
    sys.exit(1)
except bagit.BagError as e:
    print(f"not a bag: {e}", file=sys.stderr)
    sys.exit(1)
print(f"valid: {sorted(bag.algorithms)}")
