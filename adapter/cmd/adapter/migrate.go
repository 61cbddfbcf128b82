package main

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/purchase-system/purchase-system/adapter/internal/migrate"
)

const migrateUsage = `adapter migrate-keda [FILE...]: KEDA ScaledObjects with kafka triggers → HPAs on this adapter's kafka_consumergroup_lag

Reads the ScaledObjects (YAML; standard input without FILE) and prints, for
each, the HPA to apply instead on standard output (nothing else goes
there), and on standard error the kafkaLag.access grant to add to the
adapter's configuration and a NOTE for every setting that has no
equivalent or differs. KEDA's defaults are kept (lagThreshold 10,
offsetResetPolicy latest, the lag capped at lagThreshold × partitions unless
allowIdleConsumers). A namespace or name that is not a Kubernetes name is
refused. Example:

  adapter migrate-keda scaledobject.yaml > hpa.yaml && kubectl apply -f hpa.yaml
`

func migrateMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, migrateUsage)
		return 0
	}
	var in io.Reader = stdin
	if len(args) > 0 {
		var all []byte
		for _, a := range args {
			b, err := os.ReadFile(a)
			if err != nil {
				fmt.Fprintln(stderr, "adapter migrate-keda:", err)
				return 1
			}
			// Files are documents of their own, whatever their last line.
			all = append(append(all, b...), "\n---\n"...)
		}
		in = bytes.NewReader(all)
	}
	results, err := migrate.KEDA(in)
	if err != nil {
		fmt.Fprintln(stderr, "adapter migrate-keda:", err)
		return 1
	}
	if err := migrate.Write(stdout, stderr, results); err != nil {
		fmt.Fprintln(stderr, "adapter migrate-keda:", err)
		return 1
	}
	return 0
}
