"""Model families: one spec per family and detection from tensor names and shapes."""
