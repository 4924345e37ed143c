# A thin front for hack/: every target is one script a person can also run by hand.
.PHONY: demo test setup tools cluster-up cluster-down verify update

demo:  ## set everything up and run the local demo on the embedded default model
	bash hack/demo.sh

test:  ## the full test suite (static checks + every test tier, the k8s tier included)
	bash hack/test.sh

setup:  ## .venv with every pinned dependency
	bash hack/setup.sh

tools:  ## build (once, cached by version) etcd, kube-*, kwok and helm
	bash hack/build-tools.sh

cluster-up:
	bash hack/cluster.sh up

cluster-down:
	bash hack/cluster.sh down

verify:
	bash hack/verify-all.sh

update:  ## regenerate generated files (CRDs, ...), in dependency order
	bash hack/update-all.sh
