"""Models written from torch primitives. Importing this package needs torch alone."""
