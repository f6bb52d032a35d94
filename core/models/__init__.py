"""Networks (one module per architecture), weight loaders (one per format) and the registry."""
