package metricsapi

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

// objectIndex resolves label selectors to object names from watch caches:
// no LIST per request. Informers start on the first question about a
// resource and hold only object metadata.
type objectIndex struct {
	factory metadatainformer.SharedInformerFactory
	stop    <-chan struct{}

	mu       sync.Mutex
	started  map[schema.GroupVersionResource]cache.GenericLister
	syncWait time.Duration
}

func newObjectIndex(client metadata.Interface, stop <-chan struct{}) *objectIndex {
	return &objectIndex{
		factory:  metadatainformer.NewSharedInformerFactory(client, 0),
		stop:     stop,
		started:  map[schema.GroupVersionResource]cache.GenericLister{},
		syncWait: 30 * time.Second,
	}
}

func (x *objectIndex) lister(ctx context.Context, gvr schema.GroupVersionResource) (cache.GenericLister, error) {
	x.mu.Lock()
	l, ok := x.started[gvr]
	x.mu.Unlock()
	if ok {
		return l, nil
	}
	inf := x.factory.ForResource(gvr)
	x.factory.Start(x.stop)
	ctx, cancel := context.WithTimeout(ctx, x.syncWait)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil, fmt.Errorf("watching %s: cache not synced (does the adapter's service account may list and watch it?)", gvr.GroupResource())
	}
	x.mu.Lock()
	x.started[gvr] = inf.Lister()
	x.mu.Unlock()
	return inf.Lister(), nil
}

// Names lists the names of gvr objects in namespace matching selector.
func (x *objectIndex) Names(ctx context.Context, gvr schema.GroupVersionResource, namespace string, selector labels.Selector) ([]string, error) {
	l, err := x.lister(ctx, gvr)
	if err != nil {
		return nil, err
	}
	if selector == nil {
		selector = labels.Everything()
	}
	var objs []interface{ GetName() string }
	if namespace != "" {
		list, err := l.ByNamespace(namespace).List(selector)
		if err != nil {
			return nil, err
		}
		for _, o := range list {
			if n, ok := o.(interface{ GetName() string }); ok {
				objs = append(objs, n)
			}
		}
	} else {
		list, err := l.List(selector)
		if err != nil {
			return nil, err
		}
		for _, o := range list {
			if n, ok := o.(interface{ GetName() string }); ok {
				objs = append(objs, n)
			}
		}
	}
	names := make([]string, 0, len(objs))
	for _, o := range objs {
		names = append(names, o.GetName())
	}
	sort.Strings(names)
	return names, nil
}
