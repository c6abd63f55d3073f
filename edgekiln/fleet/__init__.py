"""edgekiln.fleet: the fleet service (``edgekiln fleet serve``).

``app`` (FastAPI), ``store`` (SQLAlchemy: SQLite or PostgreSQL), ``objects`` (S3 through
boto3, or a local directory), ``devservers`` (SeaweedFS and the service as local processes,
for development, tests and the demo). Importing this package loads none of them.
"""
