"""Everything that speaks HTTP through Falcon: the app, resources, errors, cache and gallery."""
