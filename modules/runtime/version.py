"""Version strings. The infotext ``Version`` names the A1111 release whose semantics we follow first, so
A1111-aware readers apply no old-version compatibility rules, then our own version."""
__version__ = "0.1.0"
infotext_version = f"v1.10.1-dw{__version__}"
