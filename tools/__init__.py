"""Developer tooling (local stack); not part of the shipped packages."""
