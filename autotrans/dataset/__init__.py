"""Raw dataset format, case discovery, integrity checking, demo data and the CBCT simulator."""
