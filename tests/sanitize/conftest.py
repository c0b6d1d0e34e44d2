"""Nothing here is a test of the normal suite: ``nox -s sanitize`` runs these scripts."""

collect_ignore_glob = ["*"]
