"""Image helpers behind the public modules: face detection, grid annotations."""
