"""flatc-generated Python for the TFLite Metadata schema (see PROVENANCE.md; do not edit)."""
