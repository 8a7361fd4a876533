"""Talking to the API: the client, retries, rate limits, budget, load shedding,
prices and the token estimator."""
