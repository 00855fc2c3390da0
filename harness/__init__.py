"""What the tests, benchmarks, drills and load tests share and the product does not: a TorchServe
of their own on moved ports (`server.LocalServer`), reports that refuse figures from a busy machine
(`report`, `other_work`), the answer checks (`answers`) and the served-equals-evaluated check
(`verify`)."""
