// Starts Swagger UI on /docs. A file of its own: the page's CSP runs no inline script.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  // Never ask validator.swagger.io to check the spec (a request to another origin).
  validatorUrl: null,
});
