"""The Message Batches route: submitting batches once (the ledger), collecting
their results, and the requests files a collect job reads."""
