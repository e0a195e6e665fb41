//! Where a value goes when a secret is injected as a query parameter (the
//! injection itself, and the masked URL an approver is shown).

/// Sets query parameter `name` to `value`: every occurrence the URL already had is
/// dropped (an agent cannot smuggle its own value next to the injected one), the
/// others keep their order.
pub fn set_query_param(url: &mut url::Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> =
        url.query_pairs().filter(|(k, _)| k != name).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let mut pairs = url.query_pairs_mut();
    pairs.clear();
    for (k, v) in kept {
        pairs.append_pair(&k, &v);
    }
    pairs.append_pair(name, value);
}
