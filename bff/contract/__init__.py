"""The HTTP API's contract as pydantic models (DESIGN §16).

:mod:`.responses` holds what the API answers, :mod:`.requests` what it takes in bodies (which the
routes parse with them, :mod:`.input`), :mod:`.queries` in query strings, :mod:`.operations` which operation of which route uses which of them, under a stable
``operationId``. :mod:`bff.openapi` builds ``/openapi.json`` from these and the app's routes, so
the document cannot drift from them; ``tests/test_openapi.py`` checks that every route of the API
has its operation here and that real answers match the models.
"""
