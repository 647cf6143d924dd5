"""Who may do what: operator keys with roles, verified buyers, and the rules of each route."""
