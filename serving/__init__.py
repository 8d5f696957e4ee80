"""Online serving of the student: the Triton model repository (cluster and loopback variants), a real Triton on
loopback, the KServe transformer, and the V2 clients (rerank; the predictor over REST or gRPC). The scoring logic
itself is framework-free, in relevance.student.scoring."""
