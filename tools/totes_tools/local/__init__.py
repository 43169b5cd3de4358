"""Local stand-ins for the deployed environment: an embedded PostgreSQL server and an AWS
emulation (moto server) holding the stack's resources. Used by the tests, the CLI and the demo;
never imported by the Lambda handlers."""
