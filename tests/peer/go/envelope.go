// The Go SDK's envelope, restated: the struct with its JSON tags, Validate, FromBytes, ToBytes,
// the aggregate id's format check and ExtractAggregateID, as the SDK's Kafka code uses them.
//
// Decoding is Go's own encoding/json (json.Unmarshal into the struct; see json_std.go) and
// time.Time's own UnmarshalJSON and MarshalJSON: nothing about JSON or time is re-implemented
// here. The rules
// layered on top (what is required, where whitespace is trimmed, the aggregate id's length and
// characters) are the SDK's, written out below in the order it checks them.

package main

import (
	"fmt"
	"strings"
	"time"
)

// Envelope has the Go SDK's fields, types and JSON tags (tenant_id a string).
type Envelope struct {
	EventID       string     `json:"event_id"`
	AggregateID   string     `json:"aggregate_id"`
	EventType     string     `json:"event_type"`
	EventVersion  int64      `json:"event_version"`
	Timestamp     time.Time  `json:"timestamp"`
	TraceID       string     `json:"trace_id,omitempty"`
	CorrelationID string     `json:"correlation_id,omitempty"`
	TenantID      string     `json:"tenant_id,omitempty"`
	Payload       rawMessage `json:"payload"`
}

// FieldError is a Validate failure, naming the field (its JSON name).
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + " " + e.Reason }

// Validate checks the SDK's rules in the SDK's order. It trims for its checks only: the
// envelope keeps its fields as they were.
func (e *Envelope) Validate() *FieldError {
	if strings.TrimSpace(e.EventID) == "" {
		return &FieldError{"event_id", "is required"}
	}
	if strings.TrimSpace(e.AggregateID) == "" {
		return &FieldError{"aggregate_id", "is required"}
	}
	if strings.TrimSpace(e.EventType) == "" {
		return &FieldError{"event_type", "is required"}
	}
	if e.EventVersion <= 0 {
		return &FieldError{"event_version", "must be positive"}
	}
	if len(e.Payload) == 0 {
		return &FieldError{"payload", "is required"}
	}
	if err := validateAggregateID(e.AggregateID); err != nil {
		return &FieldError{"aggregate_id", err.Error()}
	}
	return nil
}

// validateAggregateID: trimmed, non-empty, at most 256 bytes, each rune one of
// A-Z a-z 0-9 : _ - . / (a byte that is not UTF-8 is a rune error, so it is refused).
func validateAggregateID(id string) error {
	id = strings.TrimSpace(id)
	if id == "" {
		return fmt.Errorf("cannot be empty")
	}
	if len(id) > 256 {
		return fmt.Errorf("too long (max 256 characters)")
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z':
		case r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9':
		case r == ':' || r == '_' || r == '-' || r == '.' || r == '/':
		default:
			return fmt.Errorf("contains invalid character: %c", r)
		}
	}
	return nil
}

// FromBytes is the SDK's: json.Unmarshal into the struct, then Validate. It returns the decode
// error and the validation error separately, so that the verdict can say which one it was.
func FromBytes(data []byte) (*Envelope, error, *FieldError) {
	var env Envelope
	if err := unmarshal(data, &env); err != nil {
		return &env, err, nil
	}
	if invalid := env.Validate(); invalid != nil {
		return &env, nil, invalid
	}
	return &env, nil, nil
}

// ToBytes is the SDK's: Validate, then json.Marshal.
func (e *Envelope) ToBytes() ([]byte, error) {
	if invalid := e.Validate(); invalid != nil {
		return nil, invalid
	}
	return marshal(e)
}

// aggregateHeaderNames are the headers ExtractAggregateID reads, in its order. The SDK looks
// them up in a map[string]string built from the record's headers, so names match exactly
// (case included) and a later header of the same name replaces an earlier one.
var aggregateHeaderNames = []string{"X-Aggregate-ID", "x-aggregate-id", "Aggregate-ID", "aggregate-id"}

// ExtractAggregateID is the SDK's, for Kafka (no NATS subject): the envelope's aggregate id as
// it is (untrimmed), else the first of the headers that is valid (trimmed), else the key
// (trimmed) when valid; "" when none gives one.
func ExtractAggregateID(value []byte, headers map[string]string, key []byte) string {
	if len(value) > 0 {
		env, decodeErr, invalid := FromBytes(value)
		if decodeErr == nil && invalid == nil && env.AggregateID != "" {
			return env.AggregateID
		}
	}
	if headers != nil {
		for _, name := range aggregateHeaderNames {
			if v, ok := headers[name]; ok && strings.TrimSpace(v) != "" {
				if validateAggregateID(v) == nil {
					return strings.TrimSpace(v)
				}
			}
		}
	}
	if len(key) > 0 {
		k := strings.TrimSpace(string(key))
		if k != "" && validateAggregateID(k) == nil {
			return k
		}
	}
	return ""
}

// headerMap builds the SDK's header map from a record's headers: later names replace earlier.
func headerMap(headers [][2][]byte) map[string]string {
	m := make(map[string]string, len(headers))
	for _, h := range headers {
		m[string(h[0])] = string(h[1])
	}
	return m
}
