"""The household survey with specimen collection that field teams enter."""
