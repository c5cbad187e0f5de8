"""HTTP: the application, its route table and edge, and one module per resource of the API."""
