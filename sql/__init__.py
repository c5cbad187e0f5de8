"""The schema migrations (sql/migrations), shipped inside the package as receiver.sql."""
