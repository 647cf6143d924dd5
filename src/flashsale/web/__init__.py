"""HTTP plumbing shared by every route: error rendering, the body guard, the request context
middleware, the OpenAPI document."""
