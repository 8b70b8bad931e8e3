"""JSON Schemas (draft 2020-12) of the records edgeclf writes; see edgeclf/records.py."""
