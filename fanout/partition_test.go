package fanout_test

import (
	"fmt"
	"testing"

	"github.com/dingmq/ding/fanout"
)

// TestPartitionOf pins the user → partition map. If this test fails, the
// hash or the partition count changed: every stored user would belong to
// another partition, which is a data migration (see fanout.Partitions).
func TestPartitionOf(t *testing.T) {
	for _, tc := range []struct {
		user string
		want fanout.Partition
	}{
		// FNV-1a 32 ("a" is 0xe40c292c in the published test vectors), mod 1024.
		{"", 453},
		{"a", 300},
		{"ana", 645},
		{"bo", 62},
		{"user-42", 939},
		{"zhang.wei@example.com", 133},
		{"张伟", 281},
	} {
		t.Run(tc.user, func(t *testing.T) {
			if got := fanout.PartitionOf(tc.user); got != tc.want {
				t.Errorf("PartitionOf(%q) = %d, want %d", tc.user, got, tc.want)
			}
		})
	}
}

// TestPartitionSpread: ids of the usual shapes spread over every
// partition, none with more than half again or less than half the mean.
func TestPartitionSpread(t *testing.T) {
	const users = 100_000
	for _, pattern := range []string{"user%d", "u%06d", "%d", "employee.%d@corp.example"} {
		t.Run(pattern, func(t *testing.T) {
			var count [fanout.Partitions]int
			for i := range users {
				p := fanout.PartitionOf(fmt.Sprintf(pattern, i))
				if p >= fanout.Partitions {
					t.Fatalf("partition %d out of range", p)
				}
				count[p]++
			}
			mean := users / fanout.Partitions
			for p, n := range count {
				if n < mean/2 || n > mean*3/2 {
					t.Fatalf("partition %d has %d users; the mean is %d", p, n, mean)
				}
			}
		})
	}
}
