"""Model files and components: file formats, building components, the official-weights catalog, downloads."""
