"""The send path, one collaborator a file, each feeding the next (``app.services.sender``
puts them together):

- ``prepare``: a batch's rows re-checked against the day's rules and rendered, or held for
  the window, or skipped; nothing claimed yet.
- ``admission``: how much this process takes on at once (batches open, texts queued per sender).
- ``pacing``: each sender's texts at slots of the shared rate limit, in segments per second,
  a permit of SMS_CONCURRENCY taken before each claim.
- ``claims``: a row is claimed just before its request, many texts in one UPDATE.
- ``delivery``: the request, its answer sorted into a typed outcome, the circuit breaker.
- ``recording``: outcomes written in groups by one thread, counted into each batch's report.
"""
