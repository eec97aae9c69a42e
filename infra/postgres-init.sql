-- MLflow's metadata database beside Prefect's (one Postgres for both).
CREATE DATABASE mlflow;
