"""Describes node authentication to the OpenAPI schema (drf-spectacular)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class NodeAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "sync.transport.api.NodeAuthentication"
    name = "nodeAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": (
                "`Node <node id>:<token>`: the credential that "
                "`manage.py sync node add` printed on the receiving server."
            ),
        }
