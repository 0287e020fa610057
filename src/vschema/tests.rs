use super::*;

#[test]
fn print_golden() {
    let vs = VSchema::from_toml_str(include_str!("../../vschema/demo.toml")).unwrap();
    for id in [0u64, 1, 2, 3, 4, 5, 42, 1000, u64::MAX] {
        let k = Vindex::Xxhash.keyspace_id(id);
        let ks = vs.keyspace("app").unwrap();
        println!(
            "{id} {} {} unpinned={}",
            keyrange::hex(&k),
            ks.shard_for_workspace(id).name,
            ks.shards
                .iter()
                .find(|s| s.range.contains(&k))
                .unwrap()
                .name
        );
    }
    println!("{}", vs.describe());
}
