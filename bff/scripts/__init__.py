"""Scheduled scripts in a customer's account (DESIGN §14): the API's service, the sandbox, the
in-sandbox runner and the ``pq`` module scripts import."""

MAX_STATE_BYTES = 1024 * 1024  # what pq.set_state() keeps per script, as JSON
