//! bus-kafka: the Kafka backend on rskafka (to come).
