package metricsapi

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

// objectIndex resolves label selectors to object names from watch caches:
// no LIST per request. An informer starts on the first question about a
// resource (only resources a rule maps reach here) and holds only object
// metadata. The names a selector resolves to are kept until an object of
// the resource is added, deleted or relabelled: an HPA asking every 15 s
// about a stable Deployment costs one map lookup.
type objectIndex struct {
	client   metadata.Interface
	stop     <-chan struct{}
	syncWait time.Duration
	// retryAfter: a resource whose cache did not sync (the adapter may
	// not watch it) is not tried again for this long.
	retryAfter time.Duration

	mu      sync.Mutex
	watched map[schema.GroupVersionResource]*watched
}

type watched struct {
	synced chan struct{} // closed once the first sync ended, well or not
	lister cache.GenericLister
	err    error     // the cache did not sync
	failed time.Time // when
	// generation counts membership changes: adds, deletes, label changes.
	generation atomic.Uint64

	mu       sync.Mutex
	resolved map[resolvedKey]resolvedNames
}

type resolvedKey struct{ namespace, selector string }

type resolvedNames struct {
	generation uint64
	names      []string
}

// maxResolved bounds the selectors remembered per resource.
const maxResolved = 1000

func newObjectIndex(client metadata.Interface, stop <-chan struct{}) *objectIndex {
	return &objectIndex{client: client, stop: stop, syncWait: 30 * time.Second, retryAfter: time.Minute,
		watched: map[schema.GroupVersionResource]*watched{}}
}

func (x *objectIndex) watch(ctx context.Context, gvr schema.GroupVersionResource) (*watched, error) {
	x.mu.Lock()
	w, ok := x.watched[gvr]
	if !ok || (w.err != nil && time.Since(w.failed) >= x.retryAfter) {
		w = &watched{synced: make(chan struct{}), resolved: map[resolvedKey]resolvedNames{}}
		x.watched[gvr] = w
		// The informer starts and syncs on its own: the request that
		// started it may give up without cutting it short.
		go x.start(gvr, w)
	}
	x.mu.Unlock()
	select {
	case <-w.synced:
	case <-ctx.Done():
		return nil, fmt.Errorf("watching %s: %w while its cache syncs", gvr.GroupResource(), ctx.Err())
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return w, w.err
}

// start runs gvr's informer and closes w.synced once its first sync ended.
func (x *objectIndex) start(gvr schema.GroupVersionResource, w *watched) {
	defer close(w.synced)
	inf := metadatainformer.NewFilteredMetadataInformer(x.client, gvr, metav1.NamespaceAll, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}, nil)
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.generation.Add(1) },
		DeleteFunc: func(any) { w.generation.Add(1) },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(metav1.Object)
			n, ok2 := cur.(metav1.Object)
			if !ok1 || !ok2 || !maps.Equal(o.GetLabels(), n.GetLabels()) {
				w.generation.Add(1)
			}
		},
	})
	stop := make(chan struct{})
	var once sync.Once
	halt := func() { once.Do(func() { close(stop) }) }
	go func() {
		select {
		case <-x.stop:
			halt()
		case <-stop:
		}
	}()
	go inf.Informer().Run(stop)
	timeout := time.NewTimer(x.syncWait)
	defer timeout.Stop()
	synced := make(chan struct{})
	go func() {
		if cache.WaitForCacheSync(stop, inf.Informer().HasSynced) {
			close(synced)
		}
	}()
	select {
	case <-synced:
		x.mu.Lock()
		w.lister = inf.Lister()
		x.mu.Unlock()
	case <-timeout.C:
		// Stop it: a reflector that may not list would retry forever.
		halt()
		x.mu.Lock()
		w.err = fmt.Errorf("watching %s: cache not synced within %s (may the adapter's service account list and watch it?); not tried again for %s",
			gvr.GroupResource(), x.syncWait, x.retryAfter)
		w.failed = time.Now()
		x.mu.Unlock()
	case <-stop:
		x.mu.Lock()
		w.err, w.failed = fmt.Errorf("watching %s: the adapter is stopping", gvr.GroupResource()), time.Now()
		x.mu.Unlock()
	}
}

// Names lists the names of gvr objects in namespace matching selector,
// sorted.
func (x *objectIndex) Names(ctx context.Context, gvr schema.GroupVersionResource, namespace string, selector labels.Selector) ([]string, error) {
	w, err := x.watch(ctx, gvr)
	if err != nil {
		return nil, err
	}
	if selector == nil {
		selector = labels.Everything()
	}
	key := resolvedKey{namespace, selector.String()}
	gen := w.generation.Load()
	w.mu.Lock()
	if r, ok := w.resolved[key]; ok && r.generation == gen {
		w.mu.Unlock()
		return r.names, nil
	}
	w.mu.Unlock()

	var objs []interface{ GetName() string }
	if namespace != "" {
		list, err := w.lister.ByNamespace(namespace).List(selector)
		if err != nil {
			return nil, err
		}
		for _, o := range list {
			if n, ok := o.(interface{ GetName() string }); ok {
				objs = append(objs, n)
			}
		}
	} else {
		list, err := w.lister.List(selector)
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
	w.mu.Lock()
	if len(w.resolved) >= maxResolved {
		w.resolved = map[resolvedKey]resolvedNames{}
	}
	// Stored under the generation read before listing: a change during
	// the listing makes the next question list again.
	w.resolved[key] = resolvedNames{generation: gen, names: names}
	w.mu.Unlock()
	return names, nil
}
