"""From a record to a request and from an answer back to a row: the task, requests,
packing, parsing and validating answers, and the rows they become. Pure: no Beam, no HTTP."""
