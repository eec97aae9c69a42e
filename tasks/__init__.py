"""Pipeline steps as plain functions (tested directly) with thin Prefect task wrappers."""
