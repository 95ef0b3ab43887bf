// Kafka through sarama v1.46.0 (the version the Go SDK pins), as a Go service on the SDK uses it: envelopes published with
// sarama's hash partitioner (FNV-1a) and the SDK's X-* headers; topics read back and every
// envelope validated; a consumer-group member with the range strategy.

package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
)

const saramaVersion = "1.46.0"

// kafkaVersion is the protocol level sarama speaks: 2.1 (zstd needs it; consumer groups work
// with the test broker at this level).
var kafkaVersion = sarama.V2_1_0_0

var codecs = map[string]sarama.CompressionCodec{
	"none":   sarama.CompressionNone,
	"gzip":   sarama.CompressionGZIP,
	"snappy": sarama.CompressionSnappy,
	"lz4":    sarama.CompressionLZ4,
	"zstd":   sarama.CompressionZSTD,
}

func newConfig(clientID string) *sarama.Config {
	config := sarama.NewConfig()
	config.Version = kafkaVersion
	config.ClientID = clientID
	config.Net.DialTimeout = 10 * time.Second
	config.Metadata.Retry.Max = 10
	config.Metadata.Retry.Backoff = 200 * time.Millisecond
	return config
}

func randomID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		fail("no randomness: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// sentEnvelope is what produce reports for each envelope it published.
type sentEnvelope struct {
	N           int    `json:"n"`
	AggregateID string `json:"aggregate_id"`
	Version     int64  `json:"version"`
	EventID     string `json:"event_id"`
	Value       string `json:"value"`
	Partition   int32  `json:"partition"`
	Offset      int64  `json:"offset"`
}

// produce publishes --events envelopes over --aggregates aggregates (versions 1, 2, ... per
// aggregate, in order) as the SDK's PublishEnvelope builds them: key = aggregate id, value =
// ToBytes, headers X-Event-ID, X-Aggregate-ID, X-Event-Version, X-Event-Type and the optional
// X-Trace-ID, X-Correlation-ID, X-Tenant-ID; partitioned by sarama's NewHashPartitioner.
func produce(args []string) {
	flags := flag.NewFlagSet("produce", flag.ExitOnError)
	bootstrap := flags.String("bootstrap", "", "brokers, host:port[,host:port...]")
	topic := flags.String("topic", "", "topic")
	codec := flags.String("codec", "none", "none, gzip, snappy, lz4 or zstd")
	aggregates := flags.Int("aggregates", 50, "number of aggregates")
	events := flags.Int("events", 1000, "number of envelopes")
	flags.Parse(args)
	compression, ok := codecs[*codec]
	if !ok || *bootstrap == "" || *topic == "" || *aggregates < 1 {
		fail("produce needs --bootstrap, --topic, --aggregates >= 1 and a known --codec")
	}

	config := newConfig("bus-go-peer-producer")
	config.Producer.Partitioner = sarama.NewHashPartitioner
	config.Producer.RequiredAcks = sarama.WaitForAll
	config.Producer.Compression = compression
	config.Producer.Return.Successes = true
	config.Producer.Retry.Max = 10
	// One request in flight per broker: retries cannot reorder an aggregate's events.
	config.Net.MaxOpenRequests = 1
	// Idempotent: sarama does not keep the order of retried batches otherwise (seen on a
	// three-broker cluster right after the topic was created: versions 8-13 stored before 1-7).
	config.Producer.Idempotent = true
	producer, err := sarama.NewSyncProducer(brokers(*bootstrap), config)
	if err != nil {
		fail("cannot create the producer: " + err.Error())
	}
	defer producer.Close()

	// A zone that is not UTC, so the timestamps carry an offset, as a Go service's local time
	// does.
	zone := time.FixedZone("", 2*3600)
	versions := make([]int64, *aggregates)
	messages := make([]*sarama.ProducerMessage, 0, *events)
	sent := make([]sentEnvelope, 0, *events)
	for n := 0; n < *events; n++ {
		a := n % *aggregates
		versions[a]++
		env := &Envelope{
			EventID:      randomID(),
			AggregateID:  fmt.Sprintf("go:%s/agg.%d", *codec, a),
			EventType:    "GoOrderUpdated",
			EventVersion: versions[a],
			Timestamp:    time.Now().In(zone),
			Payload:      rawMessage(fmt.Sprintf(`{"n":%d,"from":"go","note":"<&>"}`, n)),
		}
		if n%2 == 0 {
			env.TraceID = fmt.Sprintf("trace-%d", n)
		}
		if n%3 == 0 {
			env.CorrelationID = fmt.Sprintf("corr-%d", n%7)
		}
		if n%5 == 0 {
			env.TenantID = fmt.Sprintf("tenant-%d", n%4)
		}
		value, err := env.ToBytes()
		if err != nil {
			fail("cannot encode envelope: " + err.Error())
		}
		messages = append(messages, &sarama.ProducerMessage{
			Topic:    *topic,
			Key:      sarama.StringEncoder(env.AggregateID),
			Value:    sarama.ByteEncoder(value),
			Headers:  sdkHeaders(env),
			Metadata: n,
		})
		sent = append(sent, sentEnvelope{N: n, AggregateID: env.AggregateID, Version: env.EventVersion, EventID: env.EventID, Value: string(value)})
	}
	for start := 0; start < len(messages); start += 500 {
		end := start + 500
		if end > len(messages) {
			end = len(messages)
		}
		if err := producer.SendMessages(messages[start:end]); err != nil {
			fail("produce failed: " + err.Error())
		}
	}
	for _, m := range messages {
		n := m.Metadata.(int)
		sent[n].Partition = m.Partition
		sent[n].Offset = m.Offset
	}
	emit(map[string]interface{}{"sent": sent})
}

// sdkHeaders are the headers the SDK's PublishEnvelope sets.
func sdkHeaders(env *Envelope) []sarama.RecordHeader {
	headers := []sarama.RecordHeader{
		{Key: []byte("X-Event-ID"), Value: []byte(env.EventID)},
		{Key: []byte("X-Aggregate-ID"), Value: []byte(env.AggregateID)},
		{Key: []byte("X-Event-Version"), Value: []byte(fmt.Sprintf("%d", env.EventVersion))},
		{Key: []byte("X-Event-Type"), Value: []byte(env.EventType)},
	}
	for _, h := range []struct{ name, value string }{
		{"X-Trace-ID", env.TraceID}, {"X-Correlation-ID", env.CorrelationID}, {"X-Tenant-ID", env.TenantID},
	} {
		if h.value != "" {
			headers = append(headers, sarama.RecordHeader{Key: []byte(h.name), Value: []byte(h.value)})
		}
	}
	return headers
}

// consumedRecord is what consume reports for each record: where it was, the SDK's verdict on
// its value, the headers as the SDK's map holds them, where sarama's hash partitioner puts its
// key, and ExtractAggregateID's answer.
type consumedRecord struct {
	Partition          int32             `json:"partition"`
	Offset             int64             `json:"offset"`
	Key                *text             `json:"key,omitempty"`
	Headers            map[string]string `json:"headers"`
	HashPartition      int32             `json:"hash_partition"`
	ExtractedAggregate string            `json:"extracted_aggregate_id"`
	Verdict            envelopeVerdict   `json:"verdict"`
}

// consume reads every partition of --topic from the oldest offset until --expect records are
// read (or --timeout passes), judging each value with the SDK's FromBytes.
func consume(args []string) {
	flags := flag.NewFlagSet("consume", flag.ExitOnError)
	bootstrap := flags.String("bootstrap", "", "brokers, host:port[,host:port...]")
	topic := flags.String("topic", "", "topic")
	expect := flags.Int("expect", 0, "records to read")
	timeout := flags.Duration("timeout", 60*time.Second, "give up after this long")
	flags.Parse(args)
	if *bootstrap == "" || *topic == "" || *expect < 1 {
		fail("consume needs --bootstrap, --topic and --expect >= 1")
	}

	client, err := sarama.NewClient(brokers(*bootstrap), newConfig("bus-go-peer-consumer"))
	if err != nil {
		fail("cannot connect: " + err.Error())
	}
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		fail("cannot create the consumer: " + err.Error())
	}
	defer consumer.Close()
	partitions, err := consumer.Partitions(*topic)
	if err != nil {
		fail("no partitions: " + err.Error())
	}
	partitioner := sarama.NewHashPartitioner(*topic)

	messages := make(chan *sarama.ConsumerMessage, 1024)
	errs := make(chan error, 16)
	for _, p := range partitions {
		pc, err := consumer.ConsumePartition(*topic, p, sarama.OffsetOldest)
		if err != nil {
			fail(fmt.Sprintf("cannot consume partition %d: %v", p, err))
		}
		defer pc.AsyncClose()
		go func(pc sarama.PartitionConsumer) {
			for m := range pc.Messages() {
				messages <- m
			}
		}(pc)
		go func(pc sarama.PartitionConsumer) {
			for e := range pc.Errors() {
				errs <- e
			}
		}(pc)
	}

	records := make([]consumedRecord, 0, *expect)
	deadline := time.After(*timeout)
	for len(records) < *expect {
		select {
		case m := <-messages:
			headers := make([][2][]byte, 0, len(m.Headers))
			for _, h := range m.Headers {
				headers = append(headers, [2][]byte{h.Key, h.Value})
			}
			sdkMap := headerMap(headers)
			hash, err := partitioner.Partition(&sarama.ProducerMessage{Key: sarama.ByteEncoder(m.Key)}, int32(len(partitions)))
			if err != nil {
				fail("hash partitioner: " + err.Error())
			}
			r := consumedRecord{
				Partition:          m.Partition,
				Offset:             m.Offset,
				Headers:            sdkMap,
				HashPartition:      hash,
				ExtractedAggregate: ExtractAggregateID(m.Value, sdkMap, m.Key),
				Verdict:            judgeEnvelope(fmt.Sprintf("%d/%d", m.Partition, m.Offset), m.Value),
			}
			if m.Key != nil {
				k := textOf(m.Key)
				r.Key = &k
			}
			records = append(records, r)
		case err := <-errs:
			fail("consume error: " + err.Error())
		case <-deadline:
			fail(fmt.Sprintf("read %d of %d records within %v", len(records), *expect, *timeout))
		}
	}
	sort.Slice(records, func(i, j int) bool {
		if records[i].Partition != records[j].Partition {
			return records[i].Partition < records[j].Partition
		}
		return records[i].Offset < records[j].Offset
	})
	emit(map[string]interface{}{"partitions": len(partitions), "records": records})
}

// groupLog appends one JSON object per line to a file, flushed as it goes, each with the
// wall-clock time in nanoseconds ("at"), so that a test can merge it with its own log.
type groupLog struct {
	mu  sync.Mutex
	out *os.File
}

func (l *groupLog) emit(event map[string]interface{}) {
	event["at"] = time.Now().UnixNano()
	line, err := json.Marshal(event)
	if err != nil {
		fail("cannot encode an event: " + err.Error())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.out.Write(append(line, '\n')); err != nil {
		fail("cannot write the log: " + err.Error())
	}
}

type groupHandler struct {
	log *groupLog
}

func (h *groupHandler) Setup(session sarama.ConsumerGroupSession) error {
	var partitions []int32
	for _, ps := range session.Claims() {
		partitions = append(partitions, ps...)
	}
	sort.Slice(partitions, func(i, j int) bool { return partitions[i] < partitions[j] })
	h.log.emit(map[string]interface{}{
		"event": "assign", "partitions": partitions,
		"member_id": session.MemberID(), "generation": session.GenerationID(),
	})
	return nil
}

func (h *groupHandler) Cleanup(session sarama.ConsumerGroupSession) error {
	h.log.emit(map[string]interface{}{"event": "revoke", "generation": session.GenerationID()})
	return nil
}

// ConsumeClaim handles one partition's records in order: log, then mark (sarama commits what
// is marked every Offsets.CommitInterval and when the session ends).
func (h *groupHandler) ConsumeClaim(session sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	h.log.emit(map[string]interface{}{
		"event": "claim", "partition": claim.Partition(), "initial_offset": claim.InitialOffset(),
	})
	for m := range claim.Messages() {
		h.log.emit(map[string]interface{}{
			"event": "record", "partition": m.Partition, "offset": m.Offset,
			"key": string(m.Key), "value": string(m.Value),
		})
		session.MarkMessage(m, "")
	}
	return nil
}

// group runs one sarama consumer-group member (range strategy, oldest offset when the group
// has none) on --topic until stdin is closed or --max-seconds pass, then closes (leaving the
// group), logging to --out: assign, claim, record, revoke, error and closed events. Its
// commits are OffsetCommit v1 (sarama's default) or, with --offset-retention, v2.
func group(args []string) {
	flags := flag.NewFlagSet("group", flag.ExitOnError)
	bootstrap := flags.String("bootstrap", "", "brokers, host:port[,host:port...]")
	topic := flags.String("topic", "", "topic")
	groupID := flags.String("group", "", "consumer group")
	out := flags.String("out", "", "JSON lines log")
	maxSeconds := flags.Int("max-seconds", 300, "run at most this long")
	// sarama 1.22 commits with OffsetCommit v1 unless Consumer.Offsets.Retention is set, then
	// with v2 (docs/BROKER.md: the test broker refuses v1 commits).
	retention := flags.Duration("offset-retention", 0, "Consumer.Offsets.Retention (0: sarama's default)")
	flags.Parse(args)
	if *bootstrap == "" || *topic == "" || *groupID == "" || *out == "" {
		fail("group needs --bootstrap, --topic, --group and --out")
	}
	file, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fail("cannot open the log: " + err.Error())
	}
	defer file.Close()
	log := &groupLog{out: file}

	config := newConfig("sarama")
	config.Consumer.Group.Rebalance.Strategy = sarama.BalanceStrategyRange
	config.Consumer.Group.Session.Timeout = 10 * time.Second
	config.Consumer.Group.Heartbeat.Interval = 500 * time.Millisecond
	config.Consumer.Group.Rebalance.Timeout = 20 * time.Second
	config.Consumer.Offsets.Initial = sarama.OffsetOldest
	config.Consumer.Offsets.CommitInterval = 200 * time.Millisecond
	config.Consumer.Offsets.Retention = *retention
	config.Consumer.Return.Errors = true
	member, err := sarama.NewConsumerGroup(brokers(*bootstrap), *groupID, config)
	if err != nil {
		fail("cannot create the consumer group: " + err.Error())
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*maxSeconds)*time.Second)
	defer cancel()
	go func() {
		// Closing stdin is the signal to leave.
		bufio.NewReader(os.Stdin).WriteTo(discard{})
		cancel()
	}()
	go func() {
		for err := range member.Errors() {
			log.emit(map[string]interface{}{"event": "error", "error": err.Error()})
		}
	}()
	handler := &groupHandler{log: log}
	for ctx.Err() == nil {
		if err := member.Consume(ctx, []string{*topic}, handler); err != nil && ctx.Err() == nil {
			log.emit(map[string]interface{}{"event": "error", "error": "consume: " + err.Error()})
			time.Sleep(200 * time.Millisecond)
		}
	}
	if err := member.Close(); err != nil && !strings.Contains(err.Error(), "closed") {
		log.emit(map[string]interface{}{"event": "error", "error": "close: " + err.Error()})
	}
	log.emit(map[string]interface{}{"event": "closed"})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// brokers splits a bootstrap list (`host:port,host:port`) as sarama wants it.
func brokers(bootstrap string) []string {
	return strings.Split(bootstrap, ",")
}
