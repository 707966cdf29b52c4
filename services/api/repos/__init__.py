"""All SQL of the API, one repository module per aggregate.

Controllers in `services/api/routes/` parse the request, call a repository and shape the
response; they hold no SQL. Each query is written once, here.
"""

from services.api.repos.errors import Conflict, Invalid, NotFound, RepoError, Unavailable

__all__ = ["Conflict", "Invalid", "NotFound", "RepoError", "Unavailable"]
