"""The History: an SQLite index of every image under outputs/ (filled as images are saved, reconciled with the
folder), its search, and moving images to the trash."""
