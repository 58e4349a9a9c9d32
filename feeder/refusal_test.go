package feeder

import (
	"errors"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"
)

// TestPartitionRefusalNamesTheRecords checks that a refused partition's error keeps the Kafka code
// for errors.Is, carries the broker's message and quotes a bounded number of per-record errors.
func TestPartitionRefusalNamesTheRecords(t *testing.T) {
	rp := produceapi.ResponsePartition{ErrorCode: int16(kafka.InvalidRecord), ErrorMessage: "batch refused",
		RecordErrors: []produceapi.ResponseError{{BatchIndex: 0, BatchIndexErrorMessage: "bad key"},
			{BatchIndex: 2, BatchIndexErrorMessage: "bad header"}, {BatchIndex: 3, BatchIndexErrorMessage: "x"},
			{BatchIndex: 4, BatchIndexErrorMessage: "y"}, {BatchIndex: 5, BatchIndexErrorMessage: "z"}}}
	err := partitionRefusal(rp)
	if !errors.Is(err, kafka.InvalidRecord) {
		t.Fatalf("%v does not wrap the Kafka code", err)
	}
	for _, want := range []string{"batch refused", "record 0: bad key", "record 2: bad header", "and 2 more record errors"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "record 4") {
		t.Errorf("%q quotes more than %d record errors", err, recordErrorsShownMax)
	}
	if got := partitionRefusal(produceapi.ResponsePartition{ErrorCode: int16(kafka.NotLeaderForPartition)}); !errors.Is(got, kafka.NotLeaderForPartition) || got.Error() != kafka.NotLeaderForPartition.Error() {
		t.Errorf("plain refusal = %v", got)
	}
}
