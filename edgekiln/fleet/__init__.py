"""edgekiln.fleet: the fleet service (``edgekiln fleet serve``).

``app`` (FastAPI application, body limits), ``auth`` (token checks), ``routes`` (one router per concern),
``bodies`` (the JSON bodies, pydantic), ``records`` (typed records), ``options``,
``store`` (SQLAlchemy: SQLite or PostgreSQL), ``objects`` (S3 through boto3, or a local
directory); deployments: ``deployments`` (plans, stages, results), ``deploy_status`` (the
stage rules), ``deploy_tables``, ``deploy_bodies``, ``deploy_routes``, ``packages`` (signed
packages in the object store).  Importing this package loads none of them.
"""
