"""The UCI Diabetes 130-US data set: finding and verifying the file, the encounter schema and its one value parser, the
validated table reader (pandas, training side) and the drift simulator. Depends only on core."""

__all__ = ["dataset", "schema", "simulate", "tabular"]
