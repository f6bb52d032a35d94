"""Super-resolution core: decoding, tiling, networks and encoding. Knows nothing of HTTP."""
