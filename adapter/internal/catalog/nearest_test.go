package catalog

import (
	"slices"
	"testing"
)

func TestNearest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		names []string
		want  []string
	}{
		{"flask_http_request_total", []string{"flask_http_request_per_second", "queue_depth"}, []string{"flask_http_request_per_second"}},
		{"flask_http_requests_per_second", []string{"flask_http_request_per_second", "kafka_consumergroup_lag"}, []string{"flask_http_request_per_second"}},
		{"kafka_consumer_lag", []string{"kafka_consumergroup_lag", "kafka_consumergroup_lag_seconds", "flask_http_request_per_second"}, []string{"kafka_consumergroup_lag", "kafka_consumergroup_lag_seconds"}},
		{"cpu", []string{"flask_http_request_per_second"}, nil},
	} {
		if got := Nearest(tc.name, tc.names, 3); !slices.Equal(got, tc.want) {
			t.Errorf("Nearest(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
