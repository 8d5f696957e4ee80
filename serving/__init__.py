"""Online serving of the student: the Triton model repository, the KServe transformer/predictor server, and a
tritonclient.http client. The scoring logic itself is framework-free, in relevance.student.scoring."""
